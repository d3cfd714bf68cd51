"""The interactive page (`rsunivlm-app`, docs/app.md): a Gradio front end over any checkpoint.

Modules: `stream` (token-by-token decoding), `engine` (one model answering requests), `handlers`
(uploads, checks, pictures and messages, without Gradio), `examples` (held-out synthetic scenes),
`page` (the Gradio page and serving it), `cli` (the command).
"""
