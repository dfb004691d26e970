"""Moving models in and out of other formats: export to CTranslate2 and Hugging Face."""
