"""`python -m stlight_jax.convert {import,export} ...`: the command lives in
stlight_jax/cli/convert.py; the library part (PyTorch files <-> NNX variables) in
stlight_jax/weights/torch_files.py."""

if __name__ == "__main__":
    from stlight_jax.cli.convert import main

    main()
