// Tests for host_pool: see the component header.
