// Tests for concurrency: see the component header.
