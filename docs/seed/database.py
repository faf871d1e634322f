from fastapi import FastAPI, BackgroundTasks
from sqlalchemy import create_engine, Column, Integer, String, DateTime
from sqlalchemy.ext.declarative import declarative_base
from sqlalchemy.orm import sessionmaker
from datetime import datetime

app = FastAPI()

# Database setup (simplified)
Base = declarative_base()
engine = create_engine("sqlite:///./test.db")
SessionLocal = sessionmaker(autocommit=False, autoflush=False, bind=engine)

class ActivityLog(Base):
    __tablename__ = "activity_logs"
    
    id = Column(Integer, primary_key=True, index=True)
    user_id = Column(Integer, index=True)
    action = Column(String)
    timestamp = Column(DateTime, default=datetime.utcnow)

Base.metadata.create_all(bind=engine)

def log_user_activity(user_id: int, action: str):
    db = SessionLocal()
    try:
        activity = ActivityLog(user_id=user_id, action=action)
        db.add(activity)
        db.commit()
        print(f"Logged activity: User {user_id} performed {action}")
    except Exception as e:
        print(f"Failed to log activity: {str(e)}")
        db.rollback()
    finally:
        db.close()

def update_user_statistics(user_id: int):
    db = SessionLocal()
    try:
        # Update user statistics based on recent activity
        # This is a placeholder for complex statistical calculations
        print(f"Updated statistics for user {user_id}")
    except Exception as e:
        print(f"Failed to update statistics: {str(e)}")
    finally:
        db.close()

@app.post("/user/{user_id}/action")
async def perform_user_action(
    user_id: int,
    action: str,
    background_tasks: BackgroundTasks
):
    # Log the activity in background
    background_tasks.add_task(log_user_activity, user_id, action)
    
    # Update user statistics in background
    background_tasks.add_task(update_user_statistics, user_id)
    
    return {"message": f"Action '{action}' recorded for user {user_id}"}
