// Tests for index: see the component header.
