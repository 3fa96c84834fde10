"""The vocabulary table: report words -> SNOMED CT codes for category, type, anatomic region and laterality.

Read by :mod:`tmca.terminology`; docs/TERMINOLOGY.md explains every field and how to extend the
table (add a type or region entry here, or pass a JSON file of the same structure to
``tmca.terminology.load_vocabulary``). Order matters: the first type whose word occurs and the first
region whose pattern matches win, so specific entries come before general ones. Codes are those of
DICOM's and 3D Slicer's terminologies (Slicer's ``SegmentationCategoryTypeModifier-DICOM-Master`` list,
pydicom's SNOMED CT dictionary).
"""

from __future__ import annotations

from typing import Any

VOCABULARY: dict[str, Any] = {
    "format": "tmca-vocabulary-1",
    "type_context": "Segmentation category and type - DICOM master list",
    "anatomic_context": "Anatomic codes - DICOM master list",
    "categories": {
        "abnormal": ["SCT", "49755003", "Morphologically Altered Structure"],
    },
    "types": [
        {"words": ["metastasis", "metastases", "metastatic", "secondary deposit", "secondary deposits"], "category": "abnormal", "code": ["SCT", "14799000", "Neoplasm, Secondary"]},
        {"words": ["tumour", "tumours", "tumor", "tumors", "neoplasm", "neoplasms", "cancer", "carcinoma"], "category": "abnormal", "code": ["SCT", "108369006", "Neoplasm"]},
        {"words": ["nodule", "nodules", "nodular"], "category": "abnormal", "code": ["SCT", "27925004", "Nodule"]},
        {"words": ["mass", "masses"], "category": "abnormal", "code": ["SCT", "4147007", "Mass"]},
        {"words": ["cyst", "cysts", "cystic"], "category": "abnormal", "code": ["SCT", "367643001", "Cyst"]},
        {"words": ["abscess", "abscesses"], "category": "abnormal", "code": ["SCT", "44132006", "Abscess"]},
        {"words": ["haemorrhage", "hemorrhage", "haemorrhages", "hemorrhages", "bleed", "bleeding", "haematoma", "hematoma"], "category": "abnormal", "code": ["SCT", "50960005", "Hemorrhage"]},
        {"words": ["effusion", "effusions"], "category": "abnormal", "code": ["SCT", "41699000", "Effusion"]},
        {"words": ["consolidation", "consolidations", "consolidated"], "category": "abnormal", "code": ["SCT", "95436008", "Lung consolidation"]},
        {"words": ["infection", "infections", "infected area", "infected areas", "infected", "pneumonia"], "category": "abnormal", "code": ["SCT", "309934006", "Infectious disease"]},
        {"words": ["oedema", "edema"], "category": "abnormal", "code": ["SCT", "79654002", "Edema"]},
        {"words": ["necrosis", "necrotic"], "category": "abnormal", "code": ["SCT", "6574001", "Necrosis"]},
        {"words": ["inflammation", "inflammatory"], "category": "abnormal", "code": ["SCT", "23583003", "Inflammation"]},
        {"words": ["opacity", "opacities", "ground-glass", "ground glass", "lesion", "lesions", "focus", "foci"], "category": "abnormal", "code": ["SCT", "52988006", "Lesion"]},
    ],
    "fallback_type": {"category": "abnormal", "code": ["SCT", "52988006", "Lesion"]},
    "regions": [
        {"patterns": ["\\blul\\b"], "code": ["SCT", "45653009", "Upper lobe of lung"], "laterality": "left"},
        {"patterns": ["\\brul\\b"], "code": ["SCT", "45653009", "Upper lobe of lung"], "laterality": "right"},
        {"patterns": ["\\brml\\b", "\\bmiddle lobe\\b"], "code": ["SCT", "72481006", "Middle lobe of right lung"], "laterality": "right"},
        {"patterns": ["\\blll\\b"], "code": ["SCT", "90572001", "Lower lobe of lung"], "laterality": "left"},
        {"patterns": ["\\brll\\b"], "code": ["SCT", "90572001", "Lower lobe of lung"], "laterality": "right"},
        {"patterns": ["\\bupper lobes?\\b"], "code": ["SCT", "45653009", "Upper lobe of lung"]},
        {"patterns": ["\\blower lobes?\\b"], "code": ["SCT", "90572001", "Lower lobe of lung"]},
        {"patterns": ["\\bupper (?:(?:left|right) )?(?:lung|zone)s?\\b", "\\bupper (?:lung )?zones?\\b"], "code": ["SCT", "281392002", "Upper zone of lung"]},
        {"patterns": ["\\bmiddle (?:(?:left|right) )?(?:lung|zone)s?\\b", "\\bmid(?:dle)? (?:lung )?zones?\\b"], "code": ["SCT", "281393007", "Middle zone of lung"]},
        {"patterns": ["\\blower (?:(?:left|right) )?(?:lung|zone)s?\\b", "\\blower (?:lung )?zones?\\b"], "code": ["SCT", "281394001", "Lower zone of lung"]},
        {"patterns": ["\\bpleura\\b", "\\bpleural\\b"], "code": ["SCT", "3120008", "Pleura"]},
        {"patterns": ["\\blungs?\\b", "\\bpulmonary\\b"], "code": ["SCT", "39607008", "Lung"]},
        {"patterns": ["\\bsegment (?:viii|8)\\b"], "code": ["SCT", "277962002", "Couinaud hepatic segment VIII"]},
        {"patterns": ["\\bsegment (?:vii|7)\\b"], "code": ["SCT", "277961009", "Couinaud hepatic segment VII"]},
        {"patterns": ["\\bsegment (?:vi|6)\\b"], "code": ["SCT", "277960005", "Couinaud hepatic segment VI"]},
        {"patterns": ["\\bsegment (?:iv|4)[ab]?\\b"], "code": ["SCT", "277958008", "Couinaud hepatic segment IV"]},
        {"patterns": ["\\bsegment (?:v|5)\\b"], "code": ["SCT", "277959000", "Couinaud hepatic segment V"]},
        {"patterns": ["\\bsegment (?:iii|3)\\b"], "code": ["SCT", "277957003", "Couinaud hepatic segment III"]},
        {"patterns": ["\\bsegment (?:ii|2)\\b"], "code": ["SCT", "277956007", "Couinaud hepatic segment II"]},
        {"patterns": ["\\bsegment (?:i|1)\\b", "\\bcaudate lobe\\b"], "code": ["SCT", "71133005", "Couinaud hepatic segment I"]},
        {"patterns": ["\\bliver\\b", "\\bhepatic\\b"], "code": ["SCT", "10200004", "Liver"]},
        {"patterns": ["\\bkidneys?\\b", "\\brenal\\b"], "code": ["SCT", "64033007", "Kidney"]},
        {"patterns": ["\\bfrontal lobes?\\b", "\\bfrontal\\b"], "code": ["SCT", "83251001", "Frontal lobe"]},
        {"patterns": ["\\bparietal lobes?\\b", "\\bparietal\\b"], "code": ["SCT", "16630005", "Parietal lobe"]},
        {"patterns": ["\\btemporal lobes?\\b", "\\btemporal\\b"], "code": ["SCT", "78277001", "Temporal lobe"]},
        {"patterns": ["\\boccipital lobes?\\b", "\\boccipital\\b"], "code": ["SCT", "31065004", "Occipital lobe"]},
        {"patterns": ["\\bcerebell(?:um|ar)\\b"], "code": ["SCT", "113305005", "Cerebellum"]},
        {"patterns": ["\\bbrain\\b", "\\bcerebral\\b", "\\bintracranial\\b"], "code": ["SCT", "12738006", "Brain"]},
        {"patterns": ["\\bupper outer quadrant\\b", "\\buoq\\b"], "code": ["SCT", "76365002", "Upper outer quadrant of breast"]},
        {"patterns": ["\\bupper inner quadrant\\b", "\\buiq\\b"], "code": ["SCT", "77831004", "Upper inner quadrant of breast"]},
        {"patterns": ["\\blower outer quadrant\\b", "\\bloq\\b"], "code": ["SCT", "33564002", "Lower outer quadrant of breast"]},
        {"patterns": ["\\blower inner quadrant\\b", "\\bliq\\b"], "code": ["SCT", "19100000", "Lower inner quadrant of breast"]},
        {"patterns": ["\\b(?:central|retroareolar|subareolar) (?:region of the )?breast\\b", "\\bretroareolar\\b", "\\bsubareolar\\b"], "code": ["SCT", "129786000", "Central region of breast"]},
        {"patterns": ["\\bbreasts?\\b", "\\bmammary\\b"], "code": ["SCT", "76752008", "Breast"]},
        {"patterns": ["\\bperipheral zone\\b", "\\bpz\\b"], "code": ["SCT", "279706003", "Peripheral zone of the prostate"]},
        {"patterns": ["\\btransition(?:al)? zone\\b", "\\btz\\b"], "code": ["SCT", "399384005", "Transition zone of the prostate"]},
        {"patterns": ["\\banterior fibromuscular stroma\\b", "\\bafms\\b"], "code": ["SCT", "717025007", "Anterior fibromuscular stroma of prostate"]},
        {"patterns": ["\\bprostat(?:e|ic)\\b"], "code": ["SCT", "41216001", "Prostate"]},
    ],
    "lateralities": {
        "left": ["SCT", "7771000", "Left"],
        "right": ["SCT", "24028007", "Right"],
        "bilateral": ["SCT", "51440002", "Bilateral"],
    },
}  # fmt: skip
