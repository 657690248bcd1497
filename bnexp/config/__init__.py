"""The config wing: the schema (schema), dotted keys and YAML (keypaths), error messages
(messages), the checks that an experiment means one thing (consistency) and the articles'
models (presets). Import the module you need; this package imports nothing itself.
"""
