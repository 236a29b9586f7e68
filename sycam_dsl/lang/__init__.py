"""The expression language: types, typed ASTs, the operator table and s-expression text."""
