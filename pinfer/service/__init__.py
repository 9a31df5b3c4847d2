"""The service layer: what clients and operators run on top of the parties.

The client SDK (:mod:`~pinfer.service.client`, exported as ``pinfer.Client``), the untrusted
orchestrator (:mod:`~pinfer.service.orchestrator`), ``pinfer up``'s local deployment
(:mod:`~pinfer.service.local_service`) and private generation on local processes
(:mod:`~pinfer.service.private`).
"""
