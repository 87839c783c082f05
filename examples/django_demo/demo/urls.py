from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("tasks", views.tasks, name="tasks"),
    path("signup", views.signup, name="signup"),
    path("signup/click", views.signup_click, name="signup_click"),
]
