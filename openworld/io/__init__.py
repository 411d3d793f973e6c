"""Input and output: the tables of embeddings, texts and labels the command line
reads and writes (``tables``), kept apart from the models so that no layer below
needs to know about files."""
