"""The user's own model code for the digits example: shipped to every Ray process by the config's
``runtime_env: {py_modules: [./my_models]}``, never installed and never pickled into the registry."""
