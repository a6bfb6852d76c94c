"""Configuration: ``kith.yaml`` (Settings) and ``tiers.yaml`` (TiersConfig), validated once into frozen
models; secrets only from the environment. Entry point: ``load_config()``."""
from .errors import ConfigError, MissingSecret
from .loader import load_config
from .models import Config, ModelSpec, Settings, TiersConfig
from .secrets import TelegramCredentials, model_api_key, payment_provider_token, telegram_credentials

__all__ = [
    "Config", "ConfigError", "MissingSecret", "ModelSpec", "Settings", "TelegramCredentials", "TiersConfig",
    "load_config", "model_api_key", "payment_provider_token", "telegram_credentials",
]
