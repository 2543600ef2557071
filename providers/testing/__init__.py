"""For plugin authors and Echo's own tests: fake upstream servers speaking each wire protocol, and the conformance kit."""
