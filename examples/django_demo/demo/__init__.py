"""The seed lab as a Django project: settings, URLs and views in one small app."""
