"""Network definitions, the phantom generator and the shipped default model package.

This package's own import must stay free of torch: the runtime locates the default model package
through it. Modules that need torch import it themselves.
"""
