"""Using a trained model: exporting it as one zip, answering questions from documents."""
