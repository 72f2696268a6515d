// Plain Java: chat template, history truncation, stop markers, statistics. No Android dependency,
// so CI compiles and tests it with the machine's JDK (core/run_tests.sh does the same without Gradle).
plugins {
    `java-library`
}

java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

dependencies {
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    systemProperty("gemma.shared", file("../shared").absolutePath)
}
