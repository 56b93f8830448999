from django.urls import path

from labeling.training import views

urlpatterns = [
    path("releases/<int:release_id>/trainings", views.TrainingListView.as_view(), name="training-list"),
    path("trainings/<int:training_id>", views.TrainingDetailView.as_view(), name="training-detail"),
]
