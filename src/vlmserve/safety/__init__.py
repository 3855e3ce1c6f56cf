"""The content-safety app: policies (`policy`), answer checks (`answers`), the generated
labelled set (`dataset`), and the `bench`, `eval` and `classify` commands. It talks to a
server over HTTP only and never imports vlmserve's engine internals (an import-linter
contract); see docs/safety.md."""
