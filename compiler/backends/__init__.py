"""The built-in backends, one module each; compiler.backend holds their interface and registry."""
