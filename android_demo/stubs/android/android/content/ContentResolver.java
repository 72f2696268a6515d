// Stand-in for the Android SDK (API 35 signatures); see ../README.md.
package android.content;

public abstract class ContentResolver {
  public final java.io.InputStream openInputStream(android.net.Uri uri) throws java.io.FileNotFoundException { throw new RuntimeException("stub"); }
}
