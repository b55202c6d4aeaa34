// Tests for emulated_device: see the component header.
