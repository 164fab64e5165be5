"""The language server: document sync, options, prompt repair and post-processing as pure
modules, with the pygls server on top."""
