// Tests for model: see the component header.
