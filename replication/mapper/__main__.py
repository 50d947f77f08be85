"""`python -m replication.mapper`: train a latent mapper (see replication.mapper.train.main)."""
from replication.mapper.train import main

if __name__ == "__main__":
    raise SystemExit(main())
