"""Client API keys get optional rate limits: requests and tokens per minute, concurrent requests."""

import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("plugins_api", "0003_conversationmessage_interrupted"),
    ]

    operations = [
        migrations.AddField(
            model_name="clientapikey",
            name="max_concurrent_requests",
            field=models.PositiveIntegerField(
                blank=True, null=True, validators=[django.core.validators.MinValueValidator(1)]
            ),
        ),
        migrations.AddField(
            model_name="clientapikey",
            name="requests_per_minute",
            field=models.PositiveIntegerField(
                blank=True, null=True, validators=[django.core.validators.MinValueValidator(1)]
            ),
        ),
        migrations.AddField(
            model_name="clientapikey",
            name="tokens_per_minute",
            field=models.PositiveIntegerField(
                blank=True, null=True, validators=[django.core.validators.MinValueValidator(1)]
            ),
        ),
    ]
