"""The content-safety app: policies (`policy`), class scores (`scores`), classifying one
input through the serving layer (`moderator`), the `/v1/moderations` route (`moderations`),
answer checks (`answers`), the generated labelled set (`dataset`), and the `bench`, `eval`
and `classify` commands, in process or over HTTP (`backends`). It never imports vlmserve's
engine internals (an import-linter contract); see docs/safety.md."""
