// Tests for layout: see the component header.
