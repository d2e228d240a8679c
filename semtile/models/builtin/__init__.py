"""Built-in default model weights and the script that re-creates them."""
