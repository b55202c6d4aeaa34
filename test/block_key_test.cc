// Tests for block_key: see the component header.
