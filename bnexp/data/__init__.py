"""The data wing: built-in datasets and users' array files (files), image folders (images), what
`data.scaling` does to each dtype (scaling), and what a `data` section means as arrays (datasets).
Import the module you need.
"""
