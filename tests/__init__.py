"""The test suites (a package, so that `tests.train.train_helpers` imports without sys.path edits)."""
