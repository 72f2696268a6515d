// Stand-in for the Android SDK (API 35 signatures); see ../README.md.
package android.content;

public abstract class Context {
  public java.io.File getFilesDir() { throw new RuntimeException("stub"); }
  public ContentResolver getContentResolver() { throw new RuntimeException("stub"); }
}
