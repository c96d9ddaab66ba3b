"""The command lines (absl flags): train, evaluate, convert, export, pretrained, reproduce, and
their one-line user errors. Nothing in the library imports this package."""
