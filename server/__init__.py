"""SDXL inference server: HF Inference and OpenAI Images compatible. Start with `python -m server`.

See server/README.md for the map of modules, the routes and the deployment settings.
"""
