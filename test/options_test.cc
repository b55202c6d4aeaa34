// Tests for options: see the component header.
