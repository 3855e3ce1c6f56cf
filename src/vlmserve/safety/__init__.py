"""The content-safety app: policies (`policy`), answer checks (`answers`) and the generated
labelled set (`dataset`). It talks to servers over HTTP only and never imports vlmserve's
engine internals (an import-linter contract); see docs/safety.md."""
