"""`accelbench recommend`: search pipelines from the registries under an accuracy budget and a target, measured by the ordinary runner."""
