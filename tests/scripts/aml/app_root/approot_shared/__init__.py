"""A package at AML_APP_ROOT that entry scripts in subfolders import by its full name."""
