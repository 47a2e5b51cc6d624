"""The Hugging Face Hub: the dataset layout (columns, rows and their inverse), pushing a run as
one commit, and reading pushed runs back. Every request has a timeout and retries."""
