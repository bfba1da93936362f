"""A small downstream package, written the way a phi3vision user would: ``bookshelf`` uses only
the public API, ``test_bookshelf`` tests it with the kit's two fixtures."""
