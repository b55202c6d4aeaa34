// Tests for policy: see the component header.
