"""Dataset adapters and the MEU-Instruct builder (`mellm build-data`)."""
