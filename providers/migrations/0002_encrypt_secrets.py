"""Encrypt provider secrets at rest: move them from plain JSON into secrets_encrypted."""

from django.db import migrations, models


def encrypt_existing(apps, schema_editor):
    from providers.secrets.box import encrypt_secrets

    ProviderConfig = apps.get_model("providers", "ProviderConfig")
    for row in ProviderConfig.objects.all():
        row.secrets_encrypted = encrypt_secrets(row.secrets or {})
        row.save(update_fields=["secrets_encrypted"])


def decrypt_existing(apps, schema_editor):
    from providers.secrets.box import decrypt_secrets

    ProviderConfig = apps.get_model("providers", "ProviderConfig")
    for row in ProviderConfig.objects.all():
        row.secrets = decrypt_secrets(row.secrets_encrypted)
        row.save(update_fields=["secrets"])


class Migration(migrations.Migration):
    dependencies = [("providers", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="providerconfig",
            name="secrets_encrypted",
            field=models.TextField(
                blank=True,
                editable=False,
                help_text="The secrets, encrypted (see providers.secrets.box).",
            ),
        ),
        migrations.RunPython(encrypt_existing, decrypt_existing),
        migrations.RemoveField(model_name="providerconfig", name="secrets"),
    ]
