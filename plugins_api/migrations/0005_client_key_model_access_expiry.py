"""Client API keys get model access (allowed ``provider/model`` patterns, a default model) and expiry."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("plugins_api", "0004_client_key_limits"),
    ]

    operations = [
        migrations.AddField(
            model_name="clientapikey",
            name="allowed_models",
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.AddField(
            model_name="clientapikey",
            name="default_model",
            field=models.CharField(blank=True, max_length=200),
        ),
        migrations.AddField(
            model_name="clientapikey",
            name="expires_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
