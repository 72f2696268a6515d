// Android Gradle Plugin 8.7.3 needs Gradle 8.9+ (gradle/wrapper/gradle-wrapper.properties) and JDK 17.
plugins {
    id("com.android.application") version "8.7.3" apply false
}
