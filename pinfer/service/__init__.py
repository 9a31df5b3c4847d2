"""The service layer: what clients and operators run on top of the parties.

The client SDK (:mod:`~pinfer.service.client`, exported as ``pinfer.Client``), the untrusted
orchestrator (:mod:`~pinfer.service.orchestrator`), ``pinfer up``'s local deployment
(:mod:`~pinfer.service.local_service`), private generation on local processes
(:mod:`~pinfer.service.private`), and the OpenAI-compatible HTTP endpoint over the SDK
(:mod:`~pinfer.service.openai_api`, completions cut at stops by :mod:`~pinfer.service.completion`).
"""
