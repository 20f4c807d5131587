"""The version of lnrt, in a module of its own so that any module can import it without importing the
package's `__init__` (which imports the session, which imports most of lnrt)."""
__version__ = "0.1.0"
