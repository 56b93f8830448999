from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from projects.models import Membership, Organization, OrgRole, Project, ProjectMember


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.test")


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Org {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    organization = factory.SubFactory(OrganizationFactory)
    user = factory.SubFactory(UserFactory)
    role = OrgRole.MEMBER


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project

    organization = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"Project {n}")


class ProjectMemberFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ProjectMember

    project = factory.SubFactory(ProjectFactory)
    user = factory.SubFactory(UserFactory)
    role = "annotator"


class BlobFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "storage.Blob"

    sha256 = factory.Sequence(lambda n: f"{n:064x}")
    size = 1000
    media_type = "image/jpeg"
    key = factory.LazyAttribute(lambda b: f"blobs/{b.sha256[:2]}/{b.sha256[2:4]}/{b.sha256}")


class DatasetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "storage.Dataset"

    organization = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"Dataset {n}")


class ItemFactory(factory.django.DjangoModelFactory):
    """An item with the probed facts given as `meta` (what ingest would have recorded)."""

    class Meta:
        model = "storage.Item"

    dataset = factory.SubFactory(DatasetFactory)
    name = factory.Sequence(lambda n: f"frames/{n:06d}.jpg")
    modality = "image"
    media_type = "image/jpeg"
    meta = factory.LazyFunction(lambda: {"width": 640, "height": 480, "format": "JPEG"})
    primary = factory.SubFactory(BlobFactory)
