"""The captioning engine: vocabulary, datasets, model, training, captioning, evaluation. No Streamlit here."""
