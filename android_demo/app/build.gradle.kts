plugins {
    id("com.android.application")
}

android {
    namespace = "dev.gemmaedge.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.gemmaedge.demo"
        minSdk = 28
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        ndk {
            abiFilters += listOf("arm64-v8a") // the ExecuTorch AAR's XNNPACK build targets arm64
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

dependencies {
    implementation(project(":core"))
    // The same ExecuTorch release as the exporter (executorch==1.5.1 in gemma-edge's [export] extra):
    // the .pte's operators and flatbuffer version must be ones this runtime knows.
    implementation("org.pytorch:executorch-android:1.5.1")
    implementation("com.facebook.fbjni:fbjni:0.7.0")
    implementation("com.facebook.soloader:soloader:0.10.5")
}
