"""Doc writers (tfhub.dev tree, Kaggle model card) and the tfhub.dev doc validator."""
