"""The API's routes by concern; each module's ``router(settings)`` builds its APIRouter."""
